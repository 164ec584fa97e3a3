cluster "dev" {
  num_nodes = 2
}

job "allreduce" {
  cluster   = cluster.dev
  num_nodes = length(cluster.dev.ips)
  run       = "torchrun train.py"
}
