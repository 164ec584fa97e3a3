variable "replicas" {
  type    = number
  default = 1
}

cluster "worker" {
  count = var.replicas - 2
  resources {
    cpus = "4+"
  }
}
