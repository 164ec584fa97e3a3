variable "hf_token" {
  type      = string
  sensitive = true
  default   = "hf_example"
}

output "token" {
  value = var.hf_token
}
