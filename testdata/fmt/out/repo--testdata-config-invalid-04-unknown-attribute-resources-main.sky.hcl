cluster "gpu" {
  num_nodes = 1
  resources {
    accelerator = "A100:8"
    cpus        = "32+"
  }
}
