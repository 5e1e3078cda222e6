"""The modeled CPUs: what the guest sees through CPUID and MSRs, and what the modeled host can do."""
