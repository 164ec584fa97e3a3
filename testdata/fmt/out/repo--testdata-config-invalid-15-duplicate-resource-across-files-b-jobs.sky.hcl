# Meant to be a job, but copied the cluster header.
cluster "dev" {
  num_nodes = 2
}

job "train" {
  cluster = cluster.dev
  run     = "python train.py"
}
