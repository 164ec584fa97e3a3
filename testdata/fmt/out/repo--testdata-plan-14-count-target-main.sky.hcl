variable "shards" {
  type    = number
  default = 3
}

cluster "pool" {}

job "work" {
  count   = var.shards
  cluster = cluster.pool
  run     = format("python shard.py --index %d --of %d", count.index, var.shards)
}

job "report" {
  cluster = cluster.pool
  run     = "python report.py"
}
