cluster "dev" {
  num_nodes = 3
}

cluster "eval" {
  num_nodes = 1
}
