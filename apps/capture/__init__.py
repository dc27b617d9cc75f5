"""What the apps capture from the device: camera frames (opencv), microphone audio (sounddevice)
and speech segments cut from a stream. runtime/ goes from an artifact to tokens and takes media
as files, bytes or arrays; reading a device is the apps' job."""
