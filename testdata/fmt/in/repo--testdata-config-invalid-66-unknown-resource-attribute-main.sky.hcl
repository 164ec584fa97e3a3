cluster "dev" {
  num_nodes = 2
  resources {
    cpus = "4+"
  }
}

output "head_ip" {
  value = cluster.dev.headip
}
