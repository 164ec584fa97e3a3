cluster "dev" {
  setup = "pip install torch==2.3"
  envs  = { MODE = "a" }
  lifecycle {
    ignore_changes = [setup]
  }
}
