"""Smart-meter readings pipeline on Spark Structured Streaming and Delta Lake."""
