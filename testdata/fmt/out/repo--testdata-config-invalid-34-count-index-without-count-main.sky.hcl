cluster "dev" {}

job "shard" {
  cluster = cluster.dev
  run     = "python process.py --shard ${count.index}"
}
