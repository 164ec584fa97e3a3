# The configuration the workflow in .github/workflows/skyform.yml plans on every pull request
# and applies on merge. The state lives in S3 so that CI runs and people share it; the lock
# there keeps two applies from running at once.

skyform {
  state "s3" {
    bucket = "ml-team-skyform-state"
    key    = "prod/skyform.json"
    region = "us-east-1"
  }
}

infra "aws" {
  regions = ["us-east-1", "us-west-2"]
}

variable "epochs" {
  default = 3
}

cluster "train" {
  num_nodes = 2
  resources {
    accelerators = "A100:8"
    use_spot     = true
  }
  retry_until_up = true
  autostop {
    idle_minutes = 30
  }
}

job "finetune" {
  cluster   = cluster.train
  num_nodes = 2
  run       = "torchrun --nnodes $SKYFORM_NUM_NODES --node_rank $SKYFORM_NODE_RANK train.py --epochs ${var.epochs}"
}
