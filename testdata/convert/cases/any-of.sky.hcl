# The infra the SkyPilot files name. Add `infra "local" {}` to keep this machine as an option.
infra "aws" {}

infra "gcp" {}

# Converted from any-of.yaml by `skyform convert`.
cluster "any-of" {
  resources {
    infra = "aws"
    cpus  = "4+"

    any_of {
      infra = "aws/us-east-2"
    }

    any_of {
      infra    = "aws/us-west-2"
      use_spot = true
    }

    any_of {
      infra        = "gcp/*/us-central1-a"
      accelerators = "L4"
    }
  }
}

job "any-of" {
  cluster = cluster.any-of
  run     = "echo any"
}
