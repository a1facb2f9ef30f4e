"""Fine-tuning rerankers with the Hugging Face Trainer."""
