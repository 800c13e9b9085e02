
 
req-unlicensed

instance-2