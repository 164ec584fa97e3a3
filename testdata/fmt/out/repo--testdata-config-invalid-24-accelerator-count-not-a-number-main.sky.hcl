cluster "gpu" {
  resources {
    accelerators = "A100:x"
  }
}
