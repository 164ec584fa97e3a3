cluster "dev" {
  num_nodes = 1
  resources {
    cpus = "4+"
}

job "train" {
  cluster = cluster.dev
  run     = "python train.py"
}
