"""What travels from box to platform: the SenML pack, the signed JWS, its envelope, the NGSI-LD
entities, liveness messages and the keys that bind a box's identity."""
