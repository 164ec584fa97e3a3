infra "aws" {
  regions = ["us-east-1"]
}

infra "aws" {
  regions = ["us-west-2"]
}

cluster "dev" {
  resources {
    infra = "aws"
  }
}
