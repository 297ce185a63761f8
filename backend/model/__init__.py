"""The model: loading the base LM, the judge (constrained decoding, features), the feature head, batching and the
feature store. torch and transformers are imported inside functions, so importing these modules stays cheap."""
