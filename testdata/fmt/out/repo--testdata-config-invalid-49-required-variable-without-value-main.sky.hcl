variable "hf_token" {
  type      = string
  sensitive = true
}

cluster "dev" {}

job "download" {
  cluster = cluster.dev
  run     = "huggingface-cli download meta-llama/Llama-3.1-8B"
  secrets = { HF_TOKEN = var.hf_token }
}
