cluster "node" {
  for_each = toset([1, 2])
  resources {
    cpus = "4+"
  }
}

job "train" {
  cluster = cluster.node["1"]
  run     = "python train.py"
}
