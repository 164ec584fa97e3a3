variable "hf_token" {
  type      = string
  sensitive = true
  default   = "hunter2"
}

variable "api_key" {
  type      = string
  sensitive = true
  default   = "sk-live-123"
}

cluster "dev" {
  resources {
    image_id = "docker:registry.example.com/${var.api_key}/trainer"
  }
}

job "download" {
  cluster = cluster.dev
  run     = "huggingface-cli download meta-llama/Llama-3.1-8B"
  secrets = { HF_TOKEN = var.hf_token }
  envs    = { API_KEY = var.api_key, MODE = "fast" }
}

output "token" {
  value     = var.hf_token
  sensitive = true
}

output "download_envs" {
  value     = job.download.envs
  sensitive = true
}
