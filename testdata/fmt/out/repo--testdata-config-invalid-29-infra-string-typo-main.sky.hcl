cluster "gpu" {
  resources {
    accelerators = "A100:8"
    infra        = "awz/us-east-1"
  }
}
