# The infra the SkyPilot files name. Add `infra "local" {}` to keep this machine as an option.
infra "aws" {}

# Converted from task-forms.yaml by `skyform convert`.
variable "DATA" {
  type        = string
  description = "envs.DATA of task-forms.yaml (null there: give it with -var DATA=… or SKYFORM_VAR_DATA)"
}

variable "HF_TOKEN" {
  type        = string
  description = "secrets.HF_TOKEN of task-forms.yaml (give it with -var HF_TOKEN=… or SKYFORM_VAR_HF_TOKEN)"
  sensitive   = true
}

cluster "train-v2" {
  num_nodes = 2
  workdir   = "."

  resources {
    infra        = "aws/us-east-1"
    accelerators = "A100:8"
    cpus         = "8+"
    memory       = "64+"
    use_spot     = true
    disk_size    = 512
    # resources.disk_tier (line 13): skyform has no disk tiers: choose an instance_type with the disk you need.
    #   disk_tier: high
    ports = [8080, 10022, 10023, 10024]
    # resources.labels (line 15): skyform has no labels on machines yet.
    #   labels:
    #     team: ml
    image_id = "docker:nvcr.io/nvidia/pytorch:24.01-py3"
  }

  autostop {
    idle_minutes = 30
    down         = true
  }

  # The secrets are in envs too, for setup (a cluster has no secrets); they make envs sensitive, so plans mask it.
  envs = {
    EPOCHS   = "3"
    DATA     = var.DATA
    MODE     = ""
    HF_TOKEN = var.HF_TOKEN
  }
  # file_mounts (line 30): skyform has no file_mounts yet: put local files in workdir, and copy bucket data in setup (e.g. `aws s3 sync`, `gcloud storage cp`).
  #   file_mounts:
  #     /data: s3://my-bucket/data
  #     /ckpt:
  #       name: my-ckpt
  #       store: s3
  #       mode: MOUNT
  setup = <<EOT
pip install -r requirements.txt
echo "$${HF_TOKEN:0:2}" %%{not a template}
EOT
}

job "train-v2" {
  cluster   = cluster.train-v2
  num_nodes = 2

  resources {
    accelerators = "A100:8"
  }

  secrets = {
    HF_TOKEN = var.HF_TOKEN
  }
  run = <<EOT
torchrun --nnodes=$SKYPILOT_NUM_NODES \
  --node_rank=$${SKYPILOT_NODE_RANK} train.py --epochs $EPOCHS
EOT
}
