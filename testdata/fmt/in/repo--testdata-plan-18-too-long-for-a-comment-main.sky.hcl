# Sixty clusters with long setups: the markdown plan is too long for one pull request
# comment, so the last resources keep only their header lines.
cluster "worker" {
  count = 60
  setup = <<-EOT
    echo step 00 of the long setup && pip install package-number-00==1.0.0
    echo step 01 of the long setup && pip install package-number-01==1.0.1
    echo step 02 of the long setup && pip install package-number-02==1.0.2
    echo step 03 of the long setup && pip install package-number-03==1.0.3
    echo step 04 of the long setup && pip install package-number-04==1.0.4
    echo step 05 of the long setup && pip install package-number-05==1.0.5
    echo step 06 of the long setup && pip install package-number-06==1.0.6
    echo step 07 of the long setup && pip install package-number-07==1.0.7
    echo step 08 of the long setup && pip install package-number-08==1.0.8
    echo step 09 of the long setup && pip install package-number-09==1.0.9
    echo step 10 of the long setup && pip install package-number-10==1.0.10
    echo step 11 of the long setup && pip install package-number-11==1.0.11
    echo step 12 of the long setup && pip install package-number-12==1.0.12
    echo step 13 of the long setup && pip install package-number-13==1.0.13
    echo step 14 of the long setup && pip install package-number-14==1.0.14
    echo step 15 of the long setup && pip install package-number-15==1.0.15
    echo step 16 of the long setup && pip install package-number-16==1.0.16
    echo step 17 of the long setup && pip install package-number-17==1.0.17
    echo step 18 of the long setup && pip install package-number-18==1.0.18
    echo step 19 of the long setup && pip install package-number-19==1.0.19
    echo step 20 of the long setup && pip install package-number-20==1.0.20
    echo step 21 of the long setup && pip install package-number-21==1.0.21
    echo step 22 of the long setup && pip install package-number-22==1.0.22
    echo step 23 of the long setup && pip install package-number-23==1.0.23
    echo step 24 of the long setup && pip install package-number-24==1.0.24
    echo step 25 of the long setup && pip install package-number-25==1.0.25
    echo step 26 of the long setup && pip install package-number-26==1.0.26
    echo step 27 of the long setup && pip install package-number-27==1.0.27
    echo step 28 of the long setup && pip install package-number-28==1.0.28
    echo step 29 of the long setup && pip install package-number-29==1.0.29
    echo step 30 of the long setup && pip install package-number-30==1.0.30
    echo step 31 of the long setup && pip install package-number-31==1.0.31
    echo step 32 of the long setup && pip install package-number-32==1.0.32
    echo step 33 of the long setup && pip install package-number-33==1.0.33
    echo step 34 of the long setup && pip install package-number-34==1.0.34
    echo step 35 of the long setup && pip install package-number-35==1.0.35
    echo step 36 of the long setup && pip install package-number-36==1.0.36
    echo step 37 of the long setup && pip install package-number-37==1.0.37
    echo step 38 of the long setup && pip install package-number-38==1.0.38
    echo step 39 of the long setup && pip install package-number-39==1.0.39
  EOT
}
