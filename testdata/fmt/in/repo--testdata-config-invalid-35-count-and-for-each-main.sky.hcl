cluster "dev" {}

job "sweep" {
  count    = 2
  for_each = toset(["1e-4", "3e-4"])
  cluster  = cluster.dev
  run      = "python train.py --lr ${each.value}"
}
