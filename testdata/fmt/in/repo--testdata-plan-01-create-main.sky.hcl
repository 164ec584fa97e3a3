cluster "dev" {
  num_nodes = 2
  setup     = "pip install -r requirements.txt"
  envs      = { HF_HOME = "/data/hf" }
  resources {
    cpus = "4+"
  }
}

job "prepare" {
  cluster = cluster.dev
  run     = "python prepare.py"
}

job "train" {
  cluster    = cluster.dev
  depends_on = [job.prepare]
  resources {
    accelerators = "L4:1"
  }
  run = <<-EOT
    python train.py \
      --epochs 3
  EOT
}

output "head_ip" {
  value = cluster.dev.head_ip
}
