# Three independent mistakes: all should be reported at once.
cluster "dev" {
  num_nodes = "2"
  resources {
    gpus = "A100:8"
  }
}

job "train" {
  cluster = cluster.dev
  command = "python train.py"
}
