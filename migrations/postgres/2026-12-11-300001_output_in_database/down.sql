DROP TABLE output_heads;
DROP TABLE output_chunks;
