# A two-node cluster on this machine, a data preparation job and a training job that runs
# after it. Apply takes seconds and needs no cloud account.

infra "local" {}

variable "epochs" {
  type    = number
  default = 3
}

cluster "dev" {
  num_nodes = 2
  workdir   = "./src"
  envs      = { DATASET = "tiny" }
  setup     = "echo \"node $SKYFORM_NODE_RANK ready\" > setup.done"
  resources {
    cpus = "1+"
  }
}

job "prepare" {
  cluster = cluster.dev
  run     = "sh prepare.sh"
}

job "train" {
  cluster    = cluster.dev
  num_nodes  = 2
  depends_on = [job.prepare]
  run        = <<-EOT
    echo "training on $(hostname) with $DATASET"
    sh train.sh ${var.epochs}
  EOT
}

output "head_ip" {
  value = cluster.dev.head_ip
}
