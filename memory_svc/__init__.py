"""MemoryService, MemoryBankService, ProceduralService and the long-running Operations."""
