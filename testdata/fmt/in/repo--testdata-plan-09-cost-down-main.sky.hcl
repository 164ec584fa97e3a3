cluster "dev" {
  num_nodes = 1
}
