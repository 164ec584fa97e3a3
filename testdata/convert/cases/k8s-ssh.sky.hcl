# The infra the SkyPilot files name. Add `infra "local" {}` to keep this machine as an option.

# infra = "kubernetes" uses every `infra "kubernetes" "CONTEXT" {}` block: declare one per kubeconfig context.
infra "kubernetes" "lab-a" {}

infra "ssh" "rack" {
  # The pool's machines: SkyPilot keeps them in ~/.sky/ssh_node_pools.yaml.
  hosts = []
}

# Converted from k8s-ssh.yaml by `skyform convert`.
cluster "k8s-ssh" {
  resources {
    infra    = "k8s"
    image_id = "docker:ubuntu:22.04"
    cpus     = 2

    ordered {
      infra = "k8s/lab-a"
    }

    ordered {
      infra = "ssh/rack"
    }

    # resources.ordered[2].infra (line 8): "kubernetes/arn:aws:eks:us-east-1:1:cluster/x" has more than cloud/region/zone: name the Kubernetes context in an `infra "kubernetes" "NAME"` block with `context = …` and use k8s/NAME.
    #   - infra: kubernetes/arn:aws:eks:us-east-1:1:cluster/x
  }
}

job "k8s-ssh" {
  cluster = cluster.k8s-ssh
  run     = "nvidia-smi"
}
