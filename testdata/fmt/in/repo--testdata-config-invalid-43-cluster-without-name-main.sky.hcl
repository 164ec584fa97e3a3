cluster {
  num_nodes = 1
  resources {
    cpus = "4+"
  }
}
