cluster "dev" {
  num_nodes = 0
  resources {
    cpus = "4+"
  }
}
