cluster "dev" {
  setup = "pip install -r requirements.txt"
  lifecycle {
    ignore_changes = [setupp]
  }
}
