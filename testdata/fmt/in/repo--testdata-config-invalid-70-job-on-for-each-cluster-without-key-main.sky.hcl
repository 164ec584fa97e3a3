cluster "pool" {
  for_each = toset(["a100", "h100"])
  resources {
    accelerators = "${upper(each.key)}:8"
  }
}

job "train" {
  cluster = cluster.pool
  run     = "python train.py"
}
