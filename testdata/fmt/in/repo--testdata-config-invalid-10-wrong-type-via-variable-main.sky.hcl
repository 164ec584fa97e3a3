variable "nodes" {
  type    = string
  default = "two"
}

cluster "dev" {
  num_nodes = var.nodes
  resources {
    cpus = "4+"
  }
}
