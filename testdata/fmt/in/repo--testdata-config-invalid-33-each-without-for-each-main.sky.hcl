cluster "dev" {}

job "train" {
  cluster = cluster.dev
  run     = "python train.py --lr ${each.value}"
}
