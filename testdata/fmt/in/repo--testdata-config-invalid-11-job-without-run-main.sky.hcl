cluster "dev" {
  resources {
    cpus = "4+"
  }
}

job "train" {
  cluster   = cluster.dev
  num_nodes = 1
}
