
*
req-2023-10-24

fake-key
instance-1