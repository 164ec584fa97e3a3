cluster "node" {
  for_each = toset([true, false])
  resources {
    cpus = "4+"
  }
}

job "train" {
  cluster = cluster.node["true"]
  run     = "python train.py"
}
