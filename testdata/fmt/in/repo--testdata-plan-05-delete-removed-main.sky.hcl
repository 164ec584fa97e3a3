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

output "head_ip" {
  value = cluster.dev.head_ip
}
