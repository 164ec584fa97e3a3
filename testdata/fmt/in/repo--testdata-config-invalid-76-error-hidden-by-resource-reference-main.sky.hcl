cluster "dev" {
  num_nodes = 2
  resources {
    cpus = "4+"
  }
}

job "train" {
  cluster   = cluster.dev
  num_nodes = 2
  run       = "torchrun --nnodes ${lenght(cluster.dev.ips)} train.py"
}
