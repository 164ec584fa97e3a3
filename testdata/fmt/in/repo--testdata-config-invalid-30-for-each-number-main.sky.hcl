cluster "dev" {}

job "seed" {
  for_each = 3
  cluster  = cluster.dev
  run      = "python train.py --seed ${each.key}"
}
