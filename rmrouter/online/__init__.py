"""One online DPO step's pieces that are not the LightningModule: its candidate pairs and what it logs."""
