cluster "dev" {
  num_nodes = "2"
  resources {
    cpus = "4+"
  }
}
