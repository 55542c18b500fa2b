"""`audiofind finetune`: fine-tune both towers on captioned audio."""
