cluster "dev" {
  resources {
    cpus = "4+"
  }
}

cluster "dev" {
  num_nodes = 2
  resources {
    accelerators = "L4:1"
  }
}
