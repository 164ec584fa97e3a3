cluster "dev" {
  resources {
    cpus = "4+"
  }
}

job "train" {
  cluster = "cluster.dev"
  run     = "python train.py"
}
