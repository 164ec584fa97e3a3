locals {
  acc = "A100:8"
}

cluster "gpu" {
  resources {
    accelerators = local.accelerators
  }
}
