cluster "dev" {
  setup = "pip install torch==2.4"
  envs  = { MODE = "b" }
  lifecycle {
    ignore_changes = [setup]
  }
}
