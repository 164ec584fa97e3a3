cluster "dev" {}

job "prepare" {
  cluster    = cluster.dev
  run        = "sh prepare.sh"
  depends_on = [job.train]
}

job "train" {
  cluster    = cluster.dev
  run        = "sh train.sh"
  depends_on = [job.prepare]
}
